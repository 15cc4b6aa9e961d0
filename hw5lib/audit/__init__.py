"""Whole-data-set audit: every image's maps, stored in shards, and per-class strategies (SpRAy)."""
