"""What the benchmarks are made of: timing (:mod:`.timing`), FLOP counting and MFU (:mod:`.flops`),
real-photo JPEG datasets built on the spot (:mod:`.fixtures`), the training step on random data,
its throughput and LRN's share of it (:mod:`.steps`), torchvision's reference data recipe
(:mod:`.reference`) and our loader against it (:mod:`.loader`), the throughput of ``prepare``
(:mod:`.prepare`), ``alexnet train`` itself timed (:mod:`.training`), the GPU machine's preflight
check (:mod:`.preflight`), guarded rows with a deadline (:mod:`.guarded`), the GPU benchmark's rows
(:mod:`.rows`) and tables (:mod:`.markdown`), and a benchmark's results file (:mod:`.results`).
``alexnet bench`` and the scripts in ``benchmarks/`` are short compositions of these; the machine a
number came from is :func:`alexnet.environment.environment`."""
