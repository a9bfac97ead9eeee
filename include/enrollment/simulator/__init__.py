"""The four regions' SAP Commerce systems, simulated (see ``generator``); CLI in ``cli``."""
