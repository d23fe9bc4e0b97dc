"""Networks and their files: backbones (timm), heads on features, the one-file bundle."""

import headstart.models.streaming  # noqa: E402,F401  (registers the streaming logistic head for restore_head)
