"""Guest RAM: :mod:`.guest` (the bounds-checked GuestMemory), :mod:`.backends` (anonymous,
memfd and file mappings, discard), :mod:`.dirty` (KVM's dirty page log)."""
