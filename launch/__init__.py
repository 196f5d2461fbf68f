import sys

# ``python -m launch.X``: while the package is imported for -m, argv[0] is "-m" (importing
# launch modules from Python, as the tests do, changes nothing). See aapt_jax/host_malloc.py.
if sys.argv[:1] == ["-m"]:
    from aapt_jax import host_malloc

    host_malloc.reexec()
