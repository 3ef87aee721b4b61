"""Reports and analysis derived from run records.

* :mod:`.collect`: gather ``record.json`` files into one row per run, with the keys that
  decide which runs may be averaged together (the *setting*) and which are variants of a
  method within a setting.
* :mod:`.aggregate`: mean, standard error and number of seeds per setting and method
  variant, with the paper numbers stored with presets; tables in the papers' layout.
* :mod:`.tables`: the tables as rich (terminal), Markdown, CSV and LaTeX.
* :mod:`.plots`: accuracy curves, accuracy matrices, forgetting, magnitudes, cost.
* :mod:`.html`: one self-contained HTML page with the tables and figures.
* :mod:`.landscape` and :mod:`.landscape_run`: loss/accuracy along the line between two
  task solutions of a run and on the plane through three.

Every metric is computed with :mod:`clbench.metrics` from the stored accuracy matrix.
"""
