"""The super-resolution system: data, metrics, weights, evaluation, upscaling (and training).

Submodules are imported on use (``from igc_kernels.sr import data``) so that importing the
package stays cheap.
"""
