"""The loop: the layer above the domains that wires their events to each other's workflows (``routing``),
describes them for the run graph (``machines``) and carries out what users do (``actions``)."""
