"""Why did the model say tumour here?  Attribution maps and the positional-bias check.

Modules: ``attribution`` (Grad-CAM and integrated gradients through Captum, for every
architecture, ensembles and TTA), ``sources`` (patches from a PCam folder, image files or
a ``wsiscan predict`` result), ``panels`` (PNG panels and the JSON index), ``run``
(:func:`explain`, what ``wsiscan explain`` calls) and ``positional`` (``wsiscan evaluate
--positional``).
"""
