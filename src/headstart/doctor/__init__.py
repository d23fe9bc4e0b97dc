"""The data doctor: bad files, duplicates, likely wrong labels, imbalance.

``files`` judges each file, ``duplicates`` groups copies, ``labels`` finds likely wrong labels (confident learning, through cleanlab),
``report`` holds what was found (and the ``doctor.json`` document), ``diagnosis`` runs every
check, ``quick`` is the cheap subset ``train`` runs. Every check only reads the user's files.
"""

from headstart.doctor.diagnosis import diagnose
from headstart.doctor.duplicates import (
    NEAR_COSINE,
    DuplicateGroup,
    find_duplicates,
    hash_pairs,
    similar_pairs,
)
from headstart.doctor.files import FileCheck, check_file, check_files, dhash
from headstart.doctor.labels import (
    LabelFindings,
    find_label_issues,
    label_records,
    out_of_fold_proba,
    rank_label_issues,
)
from headstart.doctor.quick import check_summary, quick_check
from headstart.doctor.report import CheckReport, exclude_copies, report_dict

__all__ = [
    "NEAR_COSINE",
    "CheckReport",
    "DuplicateGroup",
    "FileCheck",
    "LabelFindings",
    "check_file",
    "check_files",
    "check_summary",
    "dhash",
    "diagnose",
    "exclude_copies",
    "find_duplicates",
    "find_label_issues",
    "hash_pairs",
    "label_records",
    "out_of_fold_proba",
    "quick_check",
    "rank_label_issues",
    "report_dict",
    "similar_pairs",
]
