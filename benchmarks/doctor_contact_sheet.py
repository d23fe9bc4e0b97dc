"""A contact sheet of the doctor's top label issues, to judge its precision by eye.

    headstart doctor ../shared/datasets/flower_photos --out /tmp/doctor
    python benchmarks/doctor_contact_sheet.py /tmp/doctor/doctor.json --top 20 --out /tmp/doctor/top20.png

Each tile: the image, its rank, given label -> suggested label. Look at each and write down
whether the given label is wrong, the image is ambiguous (several classes, the flower not the
subject), or the label is right.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

from headstart.data.images import decode_image, read_bytes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("doctor_json", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--columns", type=int, default=5)
    parser.add_argument("--size", type=int, default=260)
    parser.add_argument("--out", type=Path, default=Path("top_label_issues.png"))
    args = parser.parse_args()
    issues = json.loads(args.doctor_json.read_text())["label_issues"][: args.top]
    w = args.size
    rows = (len(issues) + args.columns - 1) // args.columns
    sheet = Image.new("RGB", (args.columns * (w + 10), rows * (w + 30)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, issue in enumerate(issues):
        img = decode_image(read_bytes(issue["path"]), min_side=w)
        img.thumbnail((w, w))
        x, y = (k % args.columns) * (w + 10), (k // args.columns) * (w + 30)
        sheet.paste(img, (x, y))
        draw.text(
            (x, y + w + 4), f"#{k + 1} {issue['given_label']} -> {issue['suggested_label']}", fill="black"
        )
        print(
            f"#{k + 1}\t{issue['path']}\t{issue['given_label']} -> {issue['suggested_label']}\t{issue['evidence']}"
        )
    sheet.save(args.out)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
