import os
import sys

# Tests import their shared helpers as ``helpers``, and the DCNv3/DCNv4 cores' (tests/dcnv3) as ``core_reference``
# and ``core_models``.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "dcnv3"))
