"""Ophyd device layer: RHIC object types, EPICS and simulated sources, the simulated IOC.

Import :mod:`warden_devices.build` for devices; this package itself imports nothing, so
that Channel Access settings (``EPICS_CA_*``) can be made before ophyd starts pyepics.
"""
