"""Verification of unlearning (SPEC §6): relearning attack, continual unlearning, the verdict.

* :mod:`forgetlab.verify.relearn` — fine-tune on half of the forgotten people, measure recovery
  on the held-out half (``forgetlab relearn``);
* :mod:`forgetlab.verify.continual` — N sequential unlearning requests with metrics after each
  (``forgetlab continual``);
* :mod:`forgetlab.verify.verdict` — reversible / irreversible × catastrophic / not, from the
  relearning and representation evidence.
"""
