"""The loops: each subpackage is an entrypoint for ``ray job submit`` (``python -m jobs.srt CONFIG``)."""
