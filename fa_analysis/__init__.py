"""Weight alignment in error backpropagation through arbitrary weights (BP-TAW / feedback alignment).

One module per concept: ``data`` (MNIST, codes, label shuffling), ``network`` (forward pass and
the learning rules), ``normalization`` (WN, IBN), ``measures`` (angles), ``train`` (the training
loop and its per-iteration metrics), ``artifacts`` (atomic, self-describing outputs),
``alignment_terms`` and ``shadow`` (SPEC section 6), ``open_loop`` (section 7), ``aggregate``,
``embedding`` and ``figures`` (sections 8 and 9).
"""

__version__ = "0.1.0"
