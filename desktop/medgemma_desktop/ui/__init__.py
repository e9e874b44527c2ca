"""The Qt window of medgemma-desktop; everything Qt lives in this sub-package."""
