"""OPA bundles: read (tar.gz or directory), verify (.signatures.json), build, and keep one loaded from a URL.

    from llm_authz.bundle import read_bundle
    bundle = read_bundle(Path("bundle.tar.gz"), public_key=None)
    bundle.revision, bundle.modules, bundle.data

The format is OPA's own (https://www.openpolicyagent.org/docs/management-bundles): a bundle
`policy build` writes is one `opa run --bundle` loads, and the reverse.
"""

from llm_authz.bundle.format import Bundle, read_bundle, read_bundle_bytes
from llm_authz.errors import BundleError

__all__ = ["Bundle", "BundleError", "read_bundle", "read_bundle_bytes"]
