"""Model artifacts (SPEC C10): the Hugging Face cache, pinned revisions, integrity, downloads."""
