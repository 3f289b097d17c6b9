"""``capcli dashboard``: the Textual app (``app``), its panels as widgets (``views``, ``charts``,
``query``), the messages between them (``messages``), the readers of a run's feed and checkpoints
(``follow``, ``checkpoints``) and how it ends on an unexpected error (``crash``)."""
