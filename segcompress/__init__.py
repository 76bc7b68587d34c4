"""segcompress: the console entry points that join the three packages (``compress`` ->
:mod:`segcompress.cli`). The library lives in ``compress``, ``deploy`` and ``bench``."""
