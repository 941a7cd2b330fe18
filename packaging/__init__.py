"""Builds the initramfs image: archive format, compression and the shared-library closure."""
