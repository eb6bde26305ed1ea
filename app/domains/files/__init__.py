"""Project files: multipart upload to local disk, download, delete."""
