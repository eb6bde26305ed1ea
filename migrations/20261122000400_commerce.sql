-- migrate:up
create type order_status as enum ('pending', 'reserved', 'paid', 'fulfilled', 'rejected', 'cancelled', 'expired');

create table products (
    id bigint generated always as identity primary key,
    sku text not null unique check (length(sku) between 1 and 64),
    name text not null check (length(name) between 1 and 200),
    description text not null default '' check (length(description) <= 10000),
    price numeric(12, 2) not null check (price >= 0),
    stock integer not null check (stock >= 0),
    active boolean not null default true,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create index products_active_idx on products (id) where active;

create table stock_adjustments (
    id bigint generated always as identity primary key,
    product_id bigint not null references products (id) on delete cascade,
    delta integer not null check (delta <> 0),
    reason text not null check (length(reason) between 1 and 500),
    actor_id bigint not null references users (id),
    stock_after integer not null,
    created_at timestamptz not null default now()
);

create index stock_adjustments_product_idx on stock_adjustments (product_id, id);

create table orders (
    id bigint generated always as identity primary key,
    user_id bigint not null references users (id),
    status order_status not null default 'pending',
    total numeric(14, 2) not null check (total >= 0),
    currency text not null,
    reserved_until timestamptz,
    shortfall jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create index orders_user_idx on orders (user_id, id);
create index orders_status_idx on orders (status, id);
create index orders_reservation_expiry_idx on orders (reserved_until) where status = 'reserved';

create table order_items (
    order_id bigint not null references orders (id) on delete cascade,
    product_id bigint not null references products (id),
    quantity integer not null check (quantity > 0),
    unit_price numeric(12, 2) not null check (unit_price >= 0),
    primary key (order_id, product_id)
);

create table order_events (
    id bigint generated always as identity primary key,
    order_id bigint not null references orders (id) on delete cascade,
    from_status order_status,
    to_status order_status not null,
    reason text not null,
    actor_id bigint references users (id),
    created_at timestamptz not null default now()
);

create index order_events_order_idx on order_events (order_id, id);

-- Idempotency-Key bookkeeping for POST /api/orders: a key is claimed (in_progress) in its own
-- committed transaction, so a concurrent duplicate sees it and gets 409; the first response is
-- stored when the order commits and replayed for 24 hours.
create table idempotency_keys (
    user_id bigint not null references users (id) on delete cascade,
    key text not null check (length(key) between 1 and 255),
    request_hash bytea not null,
    response_status integer,
    response_body bytea,
    resource_id bigint,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    primary key (user_id, key)
);

create index idempotency_keys_expiry_idx on idempotency_keys (expires_at);

-- migrate:down
drop table idempotency_keys;
drop table order_events;
drop table order_items;
drop table orders;
drop table stock_adjustments;
drop table products;
drop type order_status;
