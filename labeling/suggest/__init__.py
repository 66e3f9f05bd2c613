"""The Label tab's shot-type model: suggestions, model-driven queue orders, pre-labels and their
honest measurement. ``service`` (the background worker and the key path's lookups), ``features``
(CLIP features cached in the database), ``model`` (Evaluate's linear probe, snapshots), ``orders``,
``stats``, ``cli`` (``python -m labeling suggest``) and ``tab`` (the Suggestions panel)."""
