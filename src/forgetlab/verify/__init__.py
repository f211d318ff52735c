"""Verification of unlearning (``docs/reference.md#reversibility``): relearning attack, MIA, probes, verdict.

* :mod:`forgetlab.verify.assess` — the whole verification of one model (``forgetlab verify``, and every
  model a study verifies): relearning attack, membership inference, probes, verdict -> ``verify.json``;

* :mod:`forgetlab.verify.relearn` — fine-tune on half of the forgotten people, measure recovery
  on the held-out half (``forgetlab relearn``);
* :mod:`forgetlab.verify.continual` — N sequential unlearning requests with metrics after each
  (``forgetlab continual``);
* :mod:`forgetlab.verify.verdict` — reversible / irreversible × catastrophic / not, from the
  behavioural (relearning, quantization) and representation evidence;
* :mod:`forgetlab.verify.heldout` — chance-corrected held-out forget-VQA recovery with a bootstrap CI;
* :mod:`forgetlab.verify.decisive` — the relearning attack run until the relearned people are back;
* :mod:`forgetlab.verify.quantize` — the quantization attack;
* :mod:`forgetlab.verify.calibrate` — representation thresholds calibrated leave-one-out, agreement.
"""
