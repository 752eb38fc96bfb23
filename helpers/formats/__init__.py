"""One module per file format, as nibabel keeps them; :mod:`helpers.io` dispatches by suffix."""
