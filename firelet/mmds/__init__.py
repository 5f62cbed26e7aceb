"""The microVM metadata service (MMDS): the data store the API fills and the guest reads.

It sits low in the layering (it needs only :mod:`firelet.errors`), so both the
API and, later, the virtio-net device's MMDS network stack can import it.
"""
