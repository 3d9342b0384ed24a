"""What the benchmarks are made of: timing (:mod:`.timing`), FLOP counting and MFU (:mod:`.flops`),
real-photo JPEG datasets built on the spot (:mod:`.fixtures`), the training step on random data
(:mod:`.steps`), torchvision's reference data recipe (:mod:`.reference`), the throughput of
``prepare`` (:mod:`.prepare`), ``alexnet train`` itself timed (:mod:`.training`) and the GPU machine's
preflight check (:mod:`.preflight`). ``alexnet bench`` and the scripts in ``benchmarks/`` are short
compositions of these; the machine a number came from is :func:`alexnet.environment.environment`."""
