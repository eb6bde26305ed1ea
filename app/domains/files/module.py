"""The files domain: files uploaded to projects (bytes on disk, rows in PostgreSQL, kept in step).

The worker that runs the sweep must see the same ``FILES_DIR`` as the API processes.
"""

from app.core.modules import Cron, Module
from app.domains.accounts.services import AccountService
from app.domains.files.controllers import ProjectFilesController
from app.domains.files.jobs import sweep_files
from app.domains.files.reservations import UploadReservations
from app.domains.files.services import FileService, Quotas
from app.domains.files.storage import FileStorage, check_files_dir
from app.domains.projects.services import ProjectService

module = Module(
    name="files",
    controllers=[ProjectFilesController],
    service=lambda s: FileService(
        s.db,
        s[ProjectService],
        FileStorage(s.settings.uploads_dir, min_free_bytes=s.settings.file_min_free_bytes),
        max_bytes=s.settings.file_max_bytes,
        allowed_types=frozenset(s.settings.file_allowed_types),
        quotas=Quotas(
            project_files=s.settings.file_project_max_count,
            project_bytes=s.settings.file_project_max_bytes,
            user_files=s.settings.file_user_max_count,
            user_bytes=s.settings.file_user_max_bytes,
        ),
        uploads=UploadReservations(
            s.valkey, per_user=s.settings.file_uploads_per_user, lease_s=s.settings.file_upload_lease_s
        ),
        temp_max_age_s=s.settings.file_temp_max_age_s,
        accounts=s.get(AccountService),
    ),
    cron=[Cron(function=sweep_files, schedule="23 * * * *", queue="default", timeout_s=600)],
    check_settings=check_files_dir,
)
