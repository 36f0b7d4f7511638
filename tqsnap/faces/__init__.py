"""Faces: the Python API, the ``tqsnap`` command and the periodic snapshot scheduler."""
