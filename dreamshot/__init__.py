"""DreamShot studio: the shared core (settings, storage, model loading, shot taxonomy) and the
features built on it (generation, survey, evaluation).

Nothing here imports gradio, ``labeling`` or ``training``; importing the package loads no model.
"""

__version__ = "0.1.0"
