"""Video: AnimateDiff shot clips, camera moves, shot-to-shot transitions and per-frame restyling with
temporal metrics (issue 15). ``service.py`` holds the logic, ``tab.py`` the Video tab, ``cli.py`` the
``python -m dreamshot video ...`` commands."""
