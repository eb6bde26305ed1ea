-- name: DemoSeeded :one
select exists(select 1 from demo_seeds where module = @module) as seeded;

-- name: MarkDemoSeeded :exec
insert into demo_seeds (module) values (@module) on conflict (module) do nothing;
