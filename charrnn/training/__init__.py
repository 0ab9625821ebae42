"""Training: the step loop and ``train()`` (``loop``); what a run is given and which of
it a resumed run may change (``options``); how a run starts, fresh or resumed
(``resume``); memory (``memory``); the --max-time budget, signals and the progress bar
(``clock``); validation (``validation``); the files a run writes (``checkpoints``) and
what it reports (``records``); what a run directory trains on (``runs``); its lock
(``lock``); and the communicators that make one process (``local``) and many MPI ranks
(``distributed``) look alike."""
