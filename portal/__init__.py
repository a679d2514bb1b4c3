"""Pickup portal (see the portal issue): not built yet."""
