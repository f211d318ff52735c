"""Studies: one YAML file (:mod:`forgetlab.study.config`) run by one pipeline (:mod:`forgetlab.study.pipeline`).

A study names a benchmark, an original model, the methods with their learning-rate grids and seeds,
how each method's run is chosen, how models are verified and what the report shows.
``forgetlab run STUDY`` runs any study; ``forgetlab demo`` runs the packaged ``demo.yaml``.
"""

from forgetlab.study.config import DEMO_STUDY, StudyConfig, read_study

__all__ = ["DEMO_STUDY", "StudyConfig", "read_study"]
