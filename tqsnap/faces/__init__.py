"""Faces: the Python API, the ``tqsnap`` command and the periodic snapshot scheduler.

Public: ``api`` and ``api_retention`` (re-exported by ``tqsnap``), ``tq`` (re-exported as
``tqsnap.tq``), ``scheduler`` and ``sources`` (the ``Snapshotter`` and what it snapshots).
The command: ``cli`` (entry point and core subcommands), ``cli_retention`` and ``cli_tq``
(more subcommands, each module with a ``register(sub)``), ``cli_common`` (helpers they share),
``cli_errors`` (exit codes and messages) and ``cli_logging`` (log setup and redaction);
``demo`` is the ``tqsnap demo`` job. Nothing outside faces imports a faces module.
"""
