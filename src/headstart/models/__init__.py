"""Networks and their files: backbones (timm), heads on features, the one-file bundle."""
