"""Training: the loop (``loop``), what a run directory trains on and how a resumed run's
options merge (``runs``), the run directory's lock (``lock``) and the communicator that
makes one process and many MPI ranks look alike (``distributed``)."""
