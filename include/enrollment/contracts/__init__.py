"""Event contracts of the regions' SAP Commerce systems: field specs, market rules, JSON Schemas."""
