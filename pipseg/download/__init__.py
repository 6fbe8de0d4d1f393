"""Downloads: the catalogue of datasets and weights, resumable verified fetches, safe extraction.

``catalogue`` knows the assets and puts one into its place (`download_asset`); it uses ``fetch``
(HTTP with Range resume, retries and checksums) and ``archive`` (extraction that never writes
outside its target). Neither of those two imports the other or the catalogue.
"""

from pipseg.download.archive import ExtractProgress, extract_archive, is_extracted, marker_path
from pipseg.download.catalogue import (
    ASSETS,
    Asset,
    AssetResult,
    download_asset,
    resolve_assets,
    url_asset,
)
from pipseg.download.fetch import (
    Checksum,
    ChecksumError,
    FetchResult,
    Progress,
    apply_mirror,
    fetch,
    fetch_first,
)

__all__ = [
    "ASSETS",
    "Asset",
    "AssetResult",
    "Checksum",
    "ChecksumError",
    "ExtractProgress",
    "FetchResult",
    "Progress",
    "apply_mirror",
    "download_asset",
    "extract_archive",
    "fetch",
    "fetch_first",
    "is_extracted",
    "marker_path",
    "resolve_assets",
    "url_asset",
]
