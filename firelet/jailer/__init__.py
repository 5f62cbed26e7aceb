"""The jailer: runs the VMM confined as Firecracker's jailer runs Firecracker (see docs/jailer.md).

Modules, in the order the jailer uses them: :mod:`flags` (the command line),
:mod:`runtime` and :mod:`elf` (what of the host the jail shows, read-only),
:mod:`layout` (the jail's directories), :mod:`cgroups`, :mod:`mounts` and
:mod:`syscalls` (the mount namespace), :mod:`privileges`, :mod:`setup` (the parent's
steps around the fork) and :mod:`confine` (the child's), both shared with the warm
launcher's jailed launches, and :mod:`main` (the sequence).
"""
