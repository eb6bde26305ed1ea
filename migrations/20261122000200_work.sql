-- migrate:up
create type project_role as enum ('viewer', 'editor', 'owner');
create type task_status as enum ('todo', 'in_progress', 'done');
create type task_priority as enum ('low', 'medium', 'high', 'urgent');

create table projects (
    id bigint generated always as identity primary key,
    name text not null check (length(name) between 1 and 200),
    description text not null default '' check (length(description) <= 10000),
    owner_id bigint not null references users (id),
    archived boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table project_members (
    project_id bigint not null references projects (id) on delete cascade,
    user_id bigint not null references users (id) on delete cascade,
    role project_role not null,
    added_at timestamptz not null default now(),
    primary key (project_id, user_id)
);

create index project_members_user_idx on project_members (user_id, project_id);

create table tasks (
    id bigint generated always as identity primary key,
    project_id bigint not null references projects (id) on delete cascade,
    title text not null check (length(title) between 1 and 300),
    description text not null default '' check (length(description) <= 20000),
    status task_status not null default 'todo',
    priority task_priority not null default 'medium',
    assignee_id bigint references users (id) on delete set null,
    due_date date,
    position bigint not null default 0,
    created_by bigint not null references users (id),
    updated_by bigint not null references users (id),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- The full-text document of a task: one definition for the index and the query that uses it.
create function task_search_document(title text, description text) returns tsvector
language sql immutable parallel safe
return setweight(to_tsvector('simple', title), 'A') || setweight(to_tsvector('simple', description), 'B');

create index tasks_project_id_idx on tasks (project_id, id);
create index tasks_project_due_idx on tasks (project_id, due_date, id);
create index tasks_project_updated_idx on tasks (project_id, updated_at, id);
create index tasks_assignee_idx on tasks (assignee_id, id) where assignee_id is not null;
create index tasks_search_idx on tasks using gin (task_search_document(title, description));

create table comments (
    id bigint generated always as identity primary key,
    task_id bigint not null references tasks (id) on delete cascade,
    author_id bigint not null references users (id),
    body text not null check (length(body) between 1 and 10000),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create index comments_task_idx on comments (task_id, id);

create table project_files (
    id bigint generated always as identity primary key,
    project_id bigint not null references projects (id) on delete cascade,
    uploaded_by bigint not null references users (id),
    filename text not null check (length(filename) between 1 and 255),
    content_type text not null,
    size_bytes bigint not null check (size_bytes >= 0),
    sha256 text not null check (length(sha256) = 64),
    storage_key text not null unique,
    created_at timestamptz not null default now()
);

create index project_files_project_idx on project_files (project_id, id);

-- migrate:down
drop table project_files;
drop table comments;
drop table tasks;
drop function task_search_document(text, text);
drop table project_members;
drop table projects;
drop type task_priority;
drop type task_status;
drop type project_role;
