"""The model: the network (``network.Model``), its recurrent cells (``cells``, one module
per cell type), the optimizers (``optim``) and the learning-rate schedules (``schedule``)."""
