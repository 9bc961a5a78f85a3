"""pvesim: a Proxmox VE API simulator for testing and demonstrating proxmox-csi.

A test and demo tool, not a Proxmox: it keeps real state (storages, volumes,
VM configs, tasks) and answers like Proxmox does, errors included.
"""
