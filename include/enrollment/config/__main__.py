"""``python -m enrollment.config [FILE]``: the configuration in force, every default filled in."""

import sys

import yaml

from enrollment.config import as_file, load_config

config = load_config(sys.argv[1] if len(sys.argv) > 1 else None)
yaml.safe_dump(as_file(config), sys.stdout, sort_keys=False, allow_unicode=True, width=100)
