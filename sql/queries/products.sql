-- name: CreateProduct :one
insert into products (sku, name, description, price, stock)
values (@sku, @name, @description, @price, @stock)
on conflict (sku) do nothing
returning *;

-- name: GetProduct :one
select * from products where id = @id;

-- name: LockProduct :one
-- Held until the commit by a change that compares If-Match with the version it reads here. The lock
-- an update takes anyway (FOR NO KEY UPDATE): FOR UPDATE would also make every order placed meanwhile
-- wait, whose item's foreign-key check takes FOR KEY SHARE on the product.
select * from products where id = @id for no key update;

-- name: UpdateProduct :one
-- The given fields set (null: kept), only when that changes the product: no row when it changes
-- nothing (updated_at and version stay), as UpdateProject. The version is the trigger's.
update products
set name = coalesce(sqlc.narg(name), name),
    description = coalesce(sqlc.narg(description), description),
    price = coalesce(sqlc.narg(price)::numeric, price),
    active = coalesce(sqlc.narg(active)::boolean, active),
    updated_at = now()
where id = @id
  and (name, description, price, active) is distinct from
      (coalesce(sqlc.narg(name), name), coalesce(sqlc.narg(description), description),
       coalesce(sqlc.narg(price)::numeric, price), coalesce(sqlc.narg(active)::boolean, active))
returning *;

-- name: ListProducts :many
-- Active products only unless include_inactive (admins); keyset by id. The search is a literal,
-- case-insensitive substring of the name (strpos, not ilike: `%` and `_` are characters, not wildcards)
-- in NFKC form on both sides (the service normalizes the search: "Café" typed composed finds it
-- written decomposed), or the exact SKU.
select * from products
where (active or @include_inactive::boolean)
  and (sqlc.narg(search)::text is null
       or strpos(lower(normalize(name, nfkc)), lower(sqlc.narg(search)::text)) > 0
       or sku = sqlc.narg(search)::text)
  and (sqlc.narg(min_price)::numeric is null or price >= sqlc.narg(min_price)::numeric)
  and (sqlc.narg(max_price)::numeric is null or price <= sqlc.narg(max_price)::numeric)
  and (not @in_stock_only::boolean or stock > 0)
  and id > @after_id
order by id
limit @row_limit;

-- name: AdjustStock :one
-- An adjustment that would take the stock below zero, or add units past max_stock, changes nothing
-- (no row), nor one whose expected_stock (when given) is not the stock now. A removal is bounded by
-- zero only: reservations given back (ReleaseStock) can leave a product above max_stock, and it must
-- still be able to shed units. The sum is computed in bigint: overflow must be a refusal, not an error.
update products set stock = stock + @delta::integer, updated_at = now()
where id = @id and stock::bigint + @delta::integer >= 0
  and (@delta::integer <= 0 or stock::bigint + @delta::integer <= @max_stock::integer)
  and (sqlc.narg(expected_stock)::integer is null or stock = sqlc.narg(expected_stock)::integer)
returning stock;

-- name: RecordStockAdjustment :exec
insert into stock_adjustments (product_id, delta, reason, actor_id, stock_after)
values (@product_id, @delta, @reason, @actor_id, @stock_after);

-- name: RecordWriteOff :exec
-- Units that leave the books without passing through the stock: a paid order's goods, damaged or
-- missing, cancelled without restocking. One removal per product, so that stock + held = initial +
-- adjustments still holds; the stock itself does not move (the units were taken from it when they
-- were reserved), so stock_after is the stock as it stands.
insert into stock_adjustments (product_id, delta, reason, actor_id, stock_after)
select p.id, -line.quantity, @reason, @actor_id, p.stock
from (
    select unnest(@product_ids::bigint[]) as product_id, unnest(@quantities::integer[]) as quantity
) line
join products p on p.id = line.product_id
order by p.id;

-- name: LockStock :many
-- The products' stock, their rows locked until the commit in id order (as the reservations' updates
-- lock them), with the lock an update takes anyway (FOR NO KEY UPDATE, as LockProduct): what is read
-- here is what the updates that follow find.
select id, stock from products where id = any(@ids::bigint[]) order by id for no key update;

-- name: ReserveStock :one
-- Takes stock only if enough is left: safe under concurrency without reading first.
update products set stock = stock - @quantity, updated_at = now()
where id = @id and stock >= @quantity
returning stock;

-- name: ReleaseStock :exec
update products set stock = stock + @quantity, updated_at = now() where id = @id;

-- name: GetProductsByIds :many
select * from products where id = any(@ids::bigint[]) order by id;

-- name: HoldProductTerms :exec
-- A placement's hold on the terms (price, active) of the products it is placed with, until it
-- commits: a change of them (HoldProductTermsForChange) waits for the placements under way, and a
-- placement that comes after the change waits for it, then reads it. Advisory locks, not row locks
-- (FOR SHARE on the rows did both, but made reservations, releases and stock adjustments wait for
-- placements too, and PostgreSQL grants a row's share lock past a waiting updater, so overlapping
-- placements of a popular product held its stock updates off for as long as they overlapped). An
-- advisory request queues behind a waiting one it conflicts with: placements cannot starve a change.
-- Shared locks in key order; a change holds one key and waits for no other.
select pg_advisory_xact_lock_shared(term_key) from (
    select distinct hashtextextended(concat('product-terms:', product_id), 0) as term_key
    from unnest(@ids::bigint[]) as product_id
    order by term_key
) as term_keys;

-- name: HoldProductTermsForChange :exec
-- A change of a product's terms, until it commits (HoldProductTerms).
select pg_advisory_xact_lock(hashtextextended(concat('product-terms:', @id::bigint), 0));
