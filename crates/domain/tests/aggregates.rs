//! Proves every rule of the `Product` and `Order` aggregates, accepted and refused, at its
//! boundaries, with given/when/then; and that every event survives the store codec unchanged.

use ficus_core::{codec, Aggregate};
use ficus_domain::money::{Currency, Money};
use ficus_domain::order::{
    Order, OrderCommand, OrderError, OrderEvent, OrderLine, OrderStatus, MAX_LINES,
};
use ficus_domain::product::{
    Product, ProductCommand, ProductError, ProductEvent, MAX_STOCK_PER_WAREHOUSE,
};
use ficus_domain::ErrorKind;
use ficus_testkit::AggregateTest;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const T1: i64 = T0 + 60_000;

fn money(s: &str) -> Money {
    Money::parse_decimal(s).unwrap()
}

fn eur() -> Currency {
    Currency::new("EUR").unwrap()
}

fn usd() -> Currency {
    Currency::new("USD").unwrap()
}

// ---------------------------------------------------------------------------------------------
// Product
// ---------------------------------------------------------------------------------------------

const SELLER: &str = "seller-1";
const PRODUCT: &str = "p-1";

fn create_product() -> ProductCommand {
    ProductCommand::Create {
        product_id: PRODUCT.into(),
        seller_id: SELLER.into(),
        name: "Fig tree".into(),
        description: "A small Ficus carica.".into(),
        category: "plants".into(),
        price: money("20.00"),
        currency: eur(),
        initial_stock: None,
        at_ms: T0,
    }
}

/// `create_product()` with some fields changed.
fn create_product_with(edit: impl FnOnce(&mut ProductCommand)) -> ProductCommand {
    let mut cmd = create_product();
    edit(&mut cmd);
    cmd
}

fn product_created(price: &str) -> ProductEvent {
    ProductEvent::ProductCreated {
        product_id: PRODUCT.into(),
        seller_id: SELLER.into(),
        name: "Fig tree".into(),
        description: "A small Ficus carica.".into(),
        category: "plants".into(),
        price: money(price),
        currency: eur(),
        at_ms: T0,
    }
}

fn stocked(warehouse: &str, delta: i64, new_quantity: i64) -> ProductEvent {
    ProductEvent::StockAdjusted {
        product_id: PRODUCT.into(),
        warehouse: warehouse.into(),
        delta,
        new_quantity,
        at_ms: T0,
    }
}

fn product_deleted() -> ProductEvent {
    ProductEvent::ProductDeleted {
        product_id: PRODUCT.into(),
        reason: "discontinued".into(),
        at_ms: T0,
    }
}

fn update_price(actor: &str, price: &str) -> ProductCommand {
    ProductCommand::UpdatePrice {
        actor_id: actor.into(),
        new_price: money(price),
        at_ms: T1,
    }
}

fn price_changed(old: &str, new: &str) -> ProductEvent {
    ProductEvent::ProductPriceChanged {
        product_id: PRODUCT.into(),
        old_price: money(old),
        new_price: money(new),
        at_ms: T1,
    }
}

fn adjust(actor: &str, warehouse: &str, delta: i64) -> ProductCommand {
    ProductCommand::AdjustStock {
        actor_id: actor.into(),
        warehouse: warehouse.into(),
        delta,
        at_ms: T1,
    }
}

fn delete(actor: &str, reason: &str) -> ProductCommand {
    ProductCommand::Delete {
        actor_id: actor.into(),
        reason: reason.into(),
        at_ms: T1,
    }
}

#[track_caller]
fn product_refused(given: Vec<ProductEvent>, cmd: ProductCommand, code: &str, kind: ErrorKind) {
    let err: ProductError = AggregateTest::<Product>::given(given)
        .when(&cmd)
        .then_expect_error();
    assert_eq!((err.code(), err.kind()), (code, kind), "error was: {err}");
}

#[test]
fn product_create_emits_created_and_sets_state() {
    let state = AggregateTest::<Product>::given_no_previous_events()
        .when(&create_product())
        .then_expect_events(vec![product_created("20.00")]);
    assert!(state.exists());
    assert!(!state.is_deleted());
    assert_eq!(state.product_id(), Some(PRODUCT));
    assert_eq!(state.seller_id(), Some(SELLER));
    assert_eq!(state.name(), Some("Fig tree"));
    assert_eq!(state.category(), Some("plants"));
    assert_eq!(state.price(), Some(money("20.00")));
    assert_eq!(state.currency(), Some(&eur()));
    assert_eq!(state.stock_total(), 0);
}

#[test]
fn product_state_before_creation_is_empty() {
    let state = Product::default();
    assert!(!state.exists());
    assert_eq!(state.price(), None);
    assert_eq!(state.seller_id(), None);
    assert_eq!(state.currency(), None);
    assert_eq!(state.stock_total(), 0);
    assert_eq!(Product::KIND, "product");
}

#[test]
fn product_create_with_initial_stock_emits_stock_adjusted_after_created() {
    let cmd = create_product_with(|c| {
        if let ProductCommand::Create { initial_stock, .. } = c {
            *initial_stock = Some(("wh-1".into(), 5));
        }
    });
    let state = AggregateTest::<Product>::given_no_previous_events()
        .when(&cmd)
        .then_expect_events(vec![product_created("20.00"), stocked("wh-1", 5, 5)]);
    assert_eq!(state.stock("wh-1"), 5);
    assert_eq!(state.stock_total(), 5);
}

#[test]
fn product_create_with_zero_initial_stock_registers_the_warehouse() {
    let cmd = create_product_with(|c| {
        if let ProductCommand::Create { initial_stock, .. } = c {
            *initial_stock = Some(("wh-1".into(), 0));
        }
    });
    let state = AggregateTest::<Product>::given_no_previous_events()
        .when(&cmd)
        .then_expect_events(vec![product_created("20.00"), stocked("wh-1", 0, 0)]);
    assert!(state.stock_by_warehouse().contains_key("wh-1"));
}

#[test]
fn product_create_refuses_bad_initial_stock() {
    for (warehouse, qty) in [
        ("wh-1", -1),
        ("wh-1", MAX_STOCK_PER_WAREHOUSE + 1),
        ("", 1),
        ("wh 1", 1),
    ] {
        let cmd = create_product_with(|c| {
            if let ProductCommand::Create { initial_stock, .. } = c {
                *initial_stock = Some((warehouse.into(), qty));
            }
        });
        product_refused(vec![], cmd, "invalid_field", ErrorKind::Invalid);
    }
}

#[test]
fn product_cannot_be_created_twice_even_after_deletion() {
    product_refused(
        vec![product_created("20.00")],
        create_product(),
        "product_already_exists",
        ErrorKind::Conflict,
    );
    product_refused(
        vec![product_created("20.00"), product_deleted()],
        create_product(),
        "product_already_exists",
        ErrorKind::Conflict,
    );
}

/// Sets one text field of the create command.
fn create_with_text(field: &str, value: String) -> ProductCommand {
    create_product_with(|c| {
        if let ProductCommand::Create {
            product_id,
            seller_id,
            name,
            description,
            category,
            ..
        } = c
        {
            let target = match field {
                "product_id" => product_id,
                "seller_id" => seller_id,
                "name" => name,
                "description" => description,
                "category" => category,
                _ => unreachable!(),
            };
            *target = value;
        }
    })
}

#[test]
fn product_create_text_field_boundaries() {
    let accepted = [
        ("name", "n".repeat(200)),
        ("name", "é".repeat(200)), // characters, not bytes
        ("description", String::new()),
        ("description", "d".repeat(5000)),
        ("category", "c".repeat(100)),
    ];
    for (field, value) in accepted {
        let events = Product::default()
            .decide(&create_with_text(field, value))
            .unwrap_or_else(|e| panic!("{field}: {e}"));
        assert_eq!(events.len(), 1);
    }
    let refused = [
        ("name", String::new()),
        ("name", "   \t".into()),
        ("name", "n".repeat(201)),
        ("description", "d".repeat(5001)),
        ("category", String::new()),
        ("category", " ".into()),
        ("category", "c".repeat(101)),
        ("product_id", String::new()),
        ("product_id", "has space".into()),
        ("seller_id", String::new()),
    ];
    for (field, value) in refused {
        let err = Product::default()
            .decide(&create_with_text(field, value.clone()))
            .unwrap_err();
        assert_eq!(err.code(), "invalid_field", "{field}={value:?}");
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn product_create_price_boundaries() {
    for ok in ["0", "0.01", "10000.00"] {
        let cmd = create_product_with(|c| {
            if let ProductCommand::Create { price, .. } = c {
                *price = money(ok);
            }
        });
        assert!(Product::default().decide(&cmd).is_ok(), "{ok}");
    }
    for bad in ["10000.01", "-0.01", "99999"] {
        let cmd = create_product_with(|c| {
            if let ProductCommand::Create { price, .. } = c {
                *price = money(bad);
            }
        });
        product_refused(vec![], cmd, "price_out_of_range", ErrorKind::Rule);
    }
}

#[test]
fn price_update_by_owner_emits_change() {
    let state = AggregateTest::<Product>::given(vec![product_created("20.00")])
        .when(&update_price(SELLER, "25.50"))
        .then_expect_events(vec![price_changed("20.00", "25.50")]);
    assert_eq!(state.price(), Some(money("25.50")));
}

#[test]
fn price_may_be_cut_by_exactly_half() {
    AggregateTest::<Product>::given(vec![product_created("100.00")])
        .when(&update_price(SELLER, "50.00"))
        .then_expect_events(vec![price_changed("100.00", "50.00")]);
    // Odd cents: half of 0.03 is 0.015, so 0.02 is allowed and 0.01 is not.
    AggregateTest::<Product>::given(vec![product_created("0.03")])
        .when(&update_price(SELLER, "0.02"))
        .then_expect_events(vec![price_changed("0.03", "0.02")]);
}

#[test]
fn price_cut_of_more_than_half_is_refused() {
    // 100.00 -> 49.99 is a 50.01 % cut.
    product_refused(
        vec![product_created("100.00")],
        update_price(SELLER, "49.99"),
        "price_cut_too_large",
        ErrorKind::Rule,
    );
    product_refused(
        vec![product_created("0.03")],
        update_price(SELLER, "0.01"),
        "price_cut_too_large",
        ErrorKind::Rule,
    );
    product_refused(
        vec![product_created("20.00")],
        update_price(SELLER, "0"),
        "price_cut_too_large",
        ErrorKind::Rule,
    );
}

#[test]
fn price_cuts_compare_with_the_current_price_not_the_original() {
    // Two successive halvings are each allowed.
    AggregateTest::<Product>::given(vec![
        product_created("100.00"),
        price_changed("100.00", "50.00"),
    ])
    .when(&update_price(SELLER, "25.00"))
    .then_expect_events(vec![price_changed("50.00", "25.00")]);
}

#[test]
fn price_update_range_boundaries() {
    AggregateTest::<Product>::given(vec![product_created("20.00")])
        .when(&update_price(SELLER, "10000.00"))
        .then_expect_events(vec![price_changed("20.00", "10000.00")]);
    AggregateTest::<Product>::given(vec![product_created("0")])
        .when(&update_price(SELLER, "0.01"))
        .then_expect_events(vec![price_changed("0", "0.01")]);
    product_refused(
        vec![product_created("20.00")],
        update_price(SELLER, "10000.01"),
        "price_out_of_range",
        ErrorKind::Rule,
    );
    product_refused(
        vec![product_created("20.00")],
        update_price(SELLER, "-1"),
        "price_out_of_range",
        ErrorKind::Rule,
    );
}

#[test]
fn unchanged_price_emits_nothing() {
    AggregateTest::<Product>::given(vec![product_created("20.00")])
        .when(&update_price(SELLER, "20.00"))
        .then_expect_events(vec![]);
}

#[test]
fn price_update_needs_an_existing_live_product_of_the_actor() {
    product_refused(
        vec![],
        update_price(SELLER, "10.00"),
        "product_not_found",
        ErrorKind::NotFound,
    );
    product_refused(
        vec![product_created("20.00")],
        update_price("seller-2", "15.00"),
        "not_product_owner",
        ErrorKind::Forbidden,
    );
    product_refused(
        vec![product_created("20.00"), product_deleted()],
        update_price(SELLER, "15.00"),
        "product_deleted",
        ErrorKind::Rule,
    );
    // A stranger is told "forbidden", not whether the product is deleted.
    product_refused(
        vec![product_created("20.00"), product_deleted()],
        update_price("seller-2", "15.00"),
        "not_product_owner",
        ErrorKind::Forbidden,
    );
}

#[test]
fn stock_goes_up_and_down_to_exactly_zero() {
    let state = AggregateTest::<Product>::given(vec![product_created("20.00")])
        .when(&adjust(SELLER, "wh-1", 10))
        .then_expect_events(vec![ProductEvent::StockAdjusted {
            product_id: PRODUCT.into(),
            warehouse: "wh-1".into(),
            delta: 10,
            new_quantity: 10,
            at_ms: T1,
        }]);
    assert_eq!(state.stock("wh-1"), 10);
    AggregateTest::<Product>::given(vec![product_created("20.00"), stocked("wh-1", 10, 10)])
        .when(&adjust(SELLER, "wh-1", -10))
        .then_expect_events(vec![ProductEvent::StockAdjusted {
            product_id: PRODUCT.into(),
            warehouse: "wh-1".into(),
            delta: -10,
            new_quantity: 0,
            at_ms: T1,
        }]);
}

#[test]
fn negative_stock_is_refused() {
    let given = vec![product_created("20.00"), stocked("wh-1", 10, 10)];
    product_refused(
        given.clone(),
        adjust(SELLER, "wh-1", -11),
        "insufficient_stock",
        ErrorKind::Rule,
    );
    // Stock is per warehouse: wh-1's units do not cover wh-2.
    product_refused(
        given.clone(),
        adjust(SELLER, "wh-2", -1),
        "insufficient_stock",
        ErrorKind::Rule,
    );
    product_refused(
        given,
        adjust(SELLER, "wh-1", i64::MIN),
        "insufficient_stock",
        ErrorKind::Rule,
    );
}

#[test]
fn stock_per_warehouse_is_capped() {
    let given = vec![product_created("20.00"), stocked("wh-1", 10, 10)];
    AggregateTest::<Product>::given(given.clone())
        .when(&adjust(SELLER, "wh-1", MAX_STOCK_PER_WAREHOUSE - 10))
        .then_expect_events(vec![ProductEvent::StockAdjusted {
            product_id: PRODUCT.into(),
            warehouse: "wh-1".into(),
            delta: MAX_STOCK_PER_WAREHOUSE - 10,
            new_quantity: MAX_STOCK_PER_WAREHOUSE,
            at_ms: T1,
        }]);
    for delta in [MAX_STOCK_PER_WAREHOUSE - 9, i64::MAX] {
        product_refused(
            given.clone(),
            adjust(SELLER, "wh-1", delta),
            "stock_limit_exceeded",
            ErrorKind::Rule,
        );
    }
}

#[test]
fn stock_total_sums_warehouses() {
    let state = Product::replay(&[
        product_created("20.00"),
        stocked("wh-1", 10, 10),
        stocked("wh-2", 3, 3),
        stocked("wh-1", -4, 6),
    ]);
    assert_eq!(state.stock("wh-1"), 6);
    assert_eq!(state.stock("wh-2"), 3);
    assert_eq!(state.stock_total(), 9);
}

#[test]
fn stock_adjustment_field_rules() {
    let given = vec![product_created("20.00")];
    for warehouse in [
        String::new(),
        "w".repeat(65),
        "wh.1".into(),
        "wh 1".into(),
        "wh/1".into(),
        "wé".into(),
    ] {
        product_refused(
            given.clone(),
            adjust(SELLER, &warehouse, 1),
            "invalid_field",
            ErrorKind::Invalid,
        );
    }
    assert!(Product::replay(&given)
        .decide(&adjust(SELLER, &"w".repeat(64), 1))
        .is_ok());
    assert!(Product::replay(&given)
        .decide(&adjust(SELLER, "Wh_9-a", 1))
        .is_ok());
    product_refused(
        given,
        adjust(SELLER, "wh-1", 0),
        "invalid_field",
        ErrorKind::Invalid,
    );
}

#[test]
fn stock_adjustment_needs_an_existing_live_product_of_the_actor() {
    product_refused(
        vec![],
        adjust(SELLER, "wh-1", 1),
        "product_not_found",
        ErrorKind::NotFound,
    );
    product_refused(
        vec![product_created("20.00")],
        adjust("seller-2", "wh-1", 1),
        "not_product_owner",
        ErrorKind::Forbidden,
    );
    product_refused(
        vec![product_created("20.00"), product_deleted()],
        adjust(SELLER, "wh-1", 1),
        "product_deleted",
        ErrorKind::Rule,
    );
}

#[test]
fn owner_deletes_product() {
    let state = AggregateTest::<Product>::given(vec![product_created("20.00")])
        .when(&delete(SELLER, "discontinued"))
        .then_expect_events(vec![ProductEvent::ProductDeleted {
            product_id: PRODUCT.into(),
            reason: "discontinued".into(),
            at_ms: T1,
        }]);
    assert!(state.is_deleted());
    assert!(state.exists());
}

#[test]
fn delete_rules() {
    let live = vec![product_created("20.00")];
    assert!(Product::replay(&live)
        .decide(&delete(SELLER, &"r".repeat(500)))
        .is_ok());
    for reason in [String::new(), "  ".into(), "r".repeat(501)] {
        product_refused(
            live.clone(),
            delete(SELLER, &reason),
            "invalid_field",
            ErrorKind::Invalid,
        );
    }
    product_refused(
        live,
        delete("seller-2", "mine now"),
        "not_product_owner",
        ErrorKind::Forbidden,
    );
    product_refused(
        vec![],
        delete(SELLER, "gone"),
        "product_not_found",
        ErrorKind::NotFound,
    );
    product_refused(
        vec![product_created("20.00"), product_deleted()],
        delete(SELLER, "again"),
        "product_deleted",
        ErrorKind::Rule,
    );
}

#[test]
fn product_error_kinds_map_to_http_statuses() {
    let cases = [
        (ProductError::ProductNotFound, 404),
        (ProductError::NotProductOwner, 403),
        (
            ProductError::ProductAlreadyExists {
                product_id: "p".into(),
            },
            409,
        ),
        (
            ProductError::PriceOutOfRange {
                price: Money::from_minor(-1),
            },
            422,
        ),
        (
            ProductError::PriceCutTooLarge {
                old_price: money("2"),
                new_price: money("0.99"),
            },
            422,
        ),
    ];
    for (err, status) in cases {
        assert_eq!(err.kind().http_status(), status, "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Order
// ---------------------------------------------------------------------------------------------

const CUSTOMER: &str = "cust-1";
const ORDER: &str = "o-1";

fn line(product: &str, quantity: u32, price: &str) -> OrderLine {
    OrderLine {
        product_id: product.into(),
        quantity,
        unit_price: money(price),
        currency: eur(),
    }
}

fn create_order(items: Vec<OrderLine>) -> OrderCommand {
    OrderCommand::Create {
        order_id: ORDER.into(),
        customer_id: CUSTOMER.into(),
        items,
        at_ms: T0,
    }
}

fn order_created(currency: Option<Currency>) -> OrderEvent {
    OrderEvent::OrderCreated {
        order_id: ORDER.into(),
        customer_id: CUSTOMER.into(),
        currency,
        at_ms: T0,
    }
}

fn item_added(product: &str, quantity: u32, price: &str, at_ms: i64) -> OrderEvent {
    let unit_price = money(price);
    OrderEvent::OrderItemAdded {
        order_id: ORDER.into(),
        product_id: product.into(),
        quantity,
        unit_price,
        currency: eur(),
        line_total: unit_price.checked_mul(quantity).unwrap(),
        at_ms,
    }
}

fn add_item(actor: &str, line: OrderLine) -> OrderCommand {
    OrderCommand::AddItem {
        actor_id: actor.into(),
        line,
        at_ms: T1,
    }
}

fn place(actor: &str) -> OrderCommand {
    OrderCommand::Place {
        actor_id: actor.into(),
        at_ms: T1,
    }
}

fn cancel(actor: &str, reason: Option<&str>) -> OrderCommand {
    OrderCommand::Cancel {
        actor_id: actor.into(),
        reason: reason.map(Into::into),
        at_ms: T1,
    }
}

fn order_placed(total: &str, item_count: u32) -> OrderEvent {
    OrderEvent::OrderPlaced {
        order_id: ORDER.into(),
        customer_id: CUSTOMER.into(),
        total: money(total),
        item_count,
        at_ms: T1,
    }
}

fn order_cancelled(reason: Option<&str>) -> OrderEvent {
    OrderEvent::OrderCancelled {
        order_id: ORDER.into(),
        reason: reason.map(Into::into),
        at_ms: T1,
    }
}

/// A draft order holding one line of `p-1`.
fn draft_with_one_line() -> Vec<OrderEvent> {
    vec![
        order_created(Some(eur())),
        item_added("p-1", 2, "10.00", T0),
    ]
}

#[track_caller]
fn order_refused(given: Vec<OrderEvent>, cmd: OrderCommand, code: &str, kind: ErrorKind) {
    let err: OrderError = AggregateTest::<Order>::given(given)
        .when(&cmd)
        .then_expect_error();
    assert_eq!((err.code(), err.kind()), (code, kind), "error was: {err}");
}

#[test]
fn order_can_be_created_empty() {
    let state = AggregateTest::<Order>::given_no_previous_events()
        .when(&create_order(vec![]))
        .then_expect_events(vec![order_created(None)]);
    assert!(state.exists());
    assert_eq!(state.status(), Some(OrderStatus::Draft));
    assert_eq!(state.customer_id(), Some(CUSTOMER));
    assert_eq!(state.order_id(), Some(ORDER));
    assert_eq!(state.currency(), None);
    assert_eq!(state.total(), Money::ZERO);
    assert_eq!((state.line_count(), state.item_count()), (0, 0));
    assert_eq!(Order::KIND, "order");
}

#[test]
fn order_state_before_creation_is_empty() {
    let state = Order::default();
    assert!(!state.exists());
    assert_eq!(state.status(), None);
    assert_eq!(state.customer_id(), None);
    assert_eq!(state.total(), Money::ZERO);
}

#[test]
fn order_created_with_items_emits_one_item_added_per_line() {
    let state = AggregateTest::<Order>::given_no_previous_events()
        .when(&create_order(vec![
            line("p-1", 2, "10.00"),
            line("p-2", 1, "0.99"),
        ]))
        .then_expect_events(vec![
            order_created(Some(eur())),
            item_added("p-1", 2, "10.00", T0),
            item_added("p-2", 1, "0.99", T0),
        ]);
    assert_eq!(state.total(), money("20.99"));
    assert_eq!(state.item_count(), 3);
    assert_eq!(state.line_count(), 2);
    assert_eq!(state.currency(), Some(&eur()));
    assert_eq!(state.lines()[1].line_total, money("0.99"));
}

#[test]
fn order_create_merges_repeated_products() {
    let state = AggregateTest::<Order>::given_no_previous_events()
        .when(&create_order(vec![
            line("p-1", 2, "10.00"),
            line("p-1", 3, "10.00"),
        ]))
        .then_expect_events(vec![
            order_created(Some(eur())),
            item_added("p-1", 2, "10.00", T0),
            item_added("p-1", 3, "10.00", T0),
        ]);
    assert_eq!(state.line_count(), 1);
    assert_eq!(state.lines()[0].quantity, 5);
    assert_eq!(state.lines()[0].line_total, money("50.00"));
}

fn distinct_lines(n: usize) -> Vec<OrderLine> {
    (0..n).map(|i| line(&format!("p-{i}"), 1, "1.00")).collect()
}

#[test]
fn order_create_allows_50_lines_but_not_51() {
    let events = Order::default()
        .decide(&create_order(distinct_lines(MAX_LINES)))
        .unwrap();
    assert_eq!(events.len(), 1 + MAX_LINES);
    assert_eq!(Order::replay(&events).line_count(), 50);
    order_refused(
        vec![],
        create_order(distinct_lines(MAX_LINES + 1)),
        "too_many_items",
        ErrorKind::Rule,
    );
}

#[test]
fn order_create_line_rules() {
    for bad in [line("p-1", 0, "1.00"), line("p-1", 10_001, "1.00")] {
        order_refused(
            vec![],
            create_order(vec![bad]),
            "invalid_quantity",
            ErrorKind::Rule,
        );
    }
    assert!(Order::default()
        .decide(&create_order(vec![line("p-1", 10_000, "1.00")]))
        .is_ok());
    for bad in [
        line("p-1", 1, "-0.01"),
        line("p-1", 1, "10000.01"),
        line("", 1, "1.00"),
        line("bad id", 1, "1.00"),
    ] {
        order_refused(
            vec![],
            create_order(vec![bad]),
            "invalid_field",
            ErrorKind::Invalid,
        );
    }
    let mut dollars = line("p-2", 1, "1.00");
    dollars.currency = usd();
    order_refused(
        vec![],
        create_order(vec![line("p-1", 1, "1.00"), dollars]),
        "currency_mismatch",
        ErrorKind::Rule,
    );
    // Merged quantities count towards the per-product limit.
    order_refused(
        vec![],
        create_order(vec![line("p-1", 6_000, "1.00"), line("p-1", 4_001, "1.00")]),
        "quantity_limit_exceeded",
        ErrorKind::Rule,
    );
}

#[test]
fn order_create_id_rules_and_conflict() {
    for (order_id, customer_id) in [("", CUSTOMER), ("o 1", CUSTOMER), (ORDER, "")] {
        order_refused(
            vec![],
            OrderCommand::Create {
                order_id: order_id.into(),
                customer_id: customer_id.into(),
                items: vec![],
                at_ms: T0,
            },
            "invalid_field",
            ErrorKind::Invalid,
        );
    }
    order_refused(
        vec![order_created(None)],
        create_order(vec![]),
        "order_already_exists",
        ErrorKind::Conflict,
    );
}

#[test]
fn add_item_to_an_empty_order_sets_its_currency() {
    let mut dollars = line("p-1", 1, "3.00");
    dollars.currency = usd();
    let state = AggregateTest::<Order>::given(vec![order_created(None)])
        .when(&add_item(CUSTOMER, dollars.clone()))
        .then_expect_events(vec![OrderEvent::OrderItemAdded {
            order_id: ORDER.into(),
            product_id: "p-1".into(),
            quantity: 1,
            unit_price: money("3.00"),
            currency: usd(),
            line_total: money("3.00"),
            at_ms: T1,
        }]);
    assert_eq!(state.currency(), Some(&usd()));
    // A later line in another currency is refused.
    let err = state.decide(&add_item(CUSTOMER, line("p-2", 1, "1.00")));
    assert_eq!(err.unwrap_err().code(), "currency_mismatch");
}

#[test]
fn add_item_merges_same_product_at_same_price() {
    let state = AggregateTest::<Order>::given(draft_with_one_line())
        .when(&add_item(CUSTOMER, line("p-1", 3, "10.00")))
        .then_expect_events(vec![item_added("p-1", 3, "10.00", T1)]);
    assert_eq!(state.line_count(), 1);
    assert_eq!(state.item_count(), 5);
    assert_eq!(state.total(), money("50.00"));
}

#[test]
fn add_item_keeps_a_new_price_on_its_own_line() {
    let state = AggregateTest::<Order>::given(draft_with_one_line())
        .when(&add_item(CUSTOMER, line("p-1", 1, "12.00")))
        .then_expect_events(vec![item_added("p-1", 1, "12.00", T1)]);
    assert_eq!(state.line_count(), 2);
    assert_eq!(state.total(), money("32.00"));
}

#[test]
fn merged_quantity_is_capped_per_product() {
    // Given 2 units of p-1: 9 998 more is exactly 10 000.
    AggregateTest::<Order>::given(draft_with_one_line())
        .when(&add_item(CUSTOMER, line("p-1", 9_998, "10.00")))
        .then_expect_events(vec![item_added("p-1", 9_998, "10.00", T1)]);
    order_refused(
        draft_with_one_line(),
        add_item(CUSTOMER, line("p-1", 9_999, "10.00")),
        "quantity_limit_exceeded",
        ErrorKind::Rule,
    );
    // The cap also spans lines of the same product at different prices.
    order_refused(
        draft_with_one_line(),
        add_item(CUSTOMER, line("p-1", 9_999, "11.00")),
        "quantity_limit_exceeded",
        ErrorKind::Rule,
    );
}

#[test]
fn add_item_line_limit_is_50() {
    let mut given = vec![order_created(Some(eur()))];
    given.extend((0..49).map(|i| item_added(&format!("p-{i}"), 1, "1.00", T0)));
    // The 50th line is accepted...
    let state = AggregateTest::<Order>::given(given.clone())
        .when(&add_item(CUSTOMER, line("p-49", 1, "1.00")))
        .then_expect_events(vec![item_added("p-49", 1, "1.00", T1)]);
    assert_eq!(state.line_count(), 50);
    given.push(item_added("p-49", 1, "1.00", T0));
    // ...the 51st is not...
    order_refused(
        given.clone(),
        add_item(CUSTOMER, line("p-50", 1, "1.00")),
        "too_many_items",
        ErrorKind::Rule,
    );
    // ...but more of a product already in the order still merges into its line.
    AggregateTest::<Order>::given(given)
        .when(&add_item(CUSTOMER, line("p-7", 4, "1.00")))
        .then_expect_events(vec![item_added("p-7", 4, "1.00", T1)]);
}

#[test]
fn add_item_quantity_rules() {
    for quantity in [0, 10_001] {
        order_refused(
            draft_with_one_line(),
            add_item(CUSTOMER, line("p-2", quantity, "1.00")),
            "invalid_quantity",
            ErrorKind::Rule,
        );
    }
}

#[test]
fn order_total_is_overflow_checked() {
    // Each line is 10 000 × 10 000.00 = 100 000 000.00; ten of them reach the money cap
    // (1 000 000 000.00) exactly, the eleventh would pass it.
    let mut given = vec![order_created(Some(eur()))];
    given.extend((0..10).map(|i| item_added(&format!("p-{i}"), 10_000, "10000.00", T0)));
    assert_eq!(Order::replay(&given).total(), money("1000000000.00"));
    order_refused(
        given,
        add_item(CUSTOMER, line("p-10", 1, "0.01")),
        "order_total_too_large",
        ErrorKind::Rule,
    );
    order_refused(
        vec![],
        create_order(
            (0..11)
                .map(|i| line(&format!("p-{i}"), 10_000, "10000.00"))
                .collect(),
        ),
        "order_total_too_large",
        ErrorKind::Rule,
    );
}

#[test]
fn add_item_needs_an_owned_draft() {
    order_refused(
        vec![],
        add_item(CUSTOMER, line("p-1", 1, "1.00")),
        "order_not_found",
        ErrorKind::NotFound,
    );
    order_refused(
        draft_with_one_line(),
        add_item("cust-2", line("p-2", 1, "1.00")),
        "not_order_owner",
        ErrorKind::Forbidden,
    );
    let mut placed = draft_with_one_line();
    placed.push(order_placed("20.00", 2));
    order_refused(
        placed,
        add_item(CUSTOMER, line("p-2", 1, "1.00")),
        "order_already_placed",
        ErrorKind::Rule,
    );
    let mut cancelled = draft_with_one_line();
    cancelled.push(order_cancelled(None));
    order_refused(
        cancelled,
        add_item(CUSTOMER, line("p-2", 1, "1.00")),
        "order_cancelled",
        ErrorKind::Rule,
    );
}

#[test]
fn placing_reports_total_and_unit_count() {
    let mut given = draft_with_one_line();
    given.push(item_added("p-2", 3, "0.50", T0));
    let state = AggregateTest::<Order>::given(given)
        .when(&place(CUSTOMER))
        .then_expect_events(vec![order_placed("21.50", 5)]);
    assert_eq!(state.status(), Some(OrderStatus::Placed));
}

#[test]
fn place_rules() {
    order_refused(
        vec![order_created(None)],
        place(CUSTOMER),
        "empty_order",
        ErrorKind::Rule,
    );
    order_refused(
        vec![],
        place(CUSTOMER),
        "order_not_found",
        ErrorKind::NotFound,
    );
    order_refused(
        draft_with_one_line(),
        place("cust-2"),
        "not_order_owner",
        ErrorKind::Forbidden,
    );
    let mut placed = draft_with_one_line();
    placed.push(order_placed("20.00", 2));
    order_refused(
        placed,
        place(CUSTOMER),
        "order_already_placed",
        ErrorKind::Rule,
    );
    let mut cancelled = draft_with_one_line();
    cancelled.push(order_cancelled(None));
    order_refused(
        cancelled,
        place(CUSTOMER),
        "order_cancelled",
        ErrorKind::Rule,
    );
}

#[test]
fn draft_and_placed_orders_can_be_cancelled() {
    let state = AggregateTest::<Order>::given(draft_with_one_line())
        .when(&cancel(CUSTOMER, None))
        .then_expect_events(vec![order_cancelled(None)]);
    assert_eq!(state.status(), Some(OrderStatus::Cancelled));
    let mut placed = draft_with_one_line();
    placed.push(order_placed("20.00", 2));
    AggregateTest::<Order>::given(placed)
        .when(&cancel(CUSTOMER, Some("changed my mind")))
        .then_expect_events(vec![order_cancelled(Some("changed my mind"))]);
    // An empty draft too.
    AggregateTest::<Order>::given(vec![order_created(None)])
        .when(&cancel(CUSTOMER, None))
        .then_expect_events(vec![order_cancelled(None)]);
}

#[test]
fn cancel_rules() {
    let mut cancelled = draft_with_one_line();
    cancelled.push(order_cancelled(None));
    order_refused(
        cancelled,
        cancel(CUSTOMER, None),
        "order_cancelled",
        ErrorKind::Rule,
    );
    order_refused(
        vec![],
        cancel(CUSTOMER, None),
        "order_not_found",
        ErrorKind::NotFound,
    );
    order_refused(
        draft_with_one_line(),
        cancel("cust-2", None),
        "not_order_owner",
        ErrorKind::Forbidden,
    );
    for reason in ["", "  ", &"r".repeat(501)] {
        order_refused(
            draft_with_one_line(),
            cancel(CUSTOMER, Some(reason)),
            "invalid_field",
            ErrorKind::Invalid,
        );
    }
    assert!(Order::replay(&draft_with_one_line())
        .decide(&cancel(CUSTOMER, Some(&"r".repeat(500))))
        .is_ok());
}

#[test]
fn order_status_serializes_lowercase() {
    for (status, text) in [
        (OrderStatus::Draft, "draft"),
        (OrderStatus::Placed, "placed"),
        (OrderStatus::Cancelled, "cancelled"),
    ] {
        assert_eq!(serde_json::to_value(status).unwrap(), text);
        assert_eq!(status.as_str(), text);
    }
}

// ---------------------------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn round_trips<E>(event: E, expected_type: &str)
where
    E: ficus_core::DomainEvent + PartialEq,
{
    let (event_type, payload) = codec::encode(&event).unwrap();
    assert_eq!(event_type.as_str(), expected_type);
    assert!(payload.is_object(), "{payload}");
    let back: E = codec::decode(event_type.as_str(), 1, &payload).unwrap();
    assert_eq!(back, event);
}

#[test]
fn every_product_event_round_trips_through_the_codec() {
    round_trips(product_created("19.99"), "ProductCreated");
    round_trips(price_changed("19.99", "15.00"), "ProductPriceChanged");
    round_trips(stocked("wh-1", -3, 7), "StockAdjusted");
    round_trips(product_deleted(), "ProductDeleted");
}

#[test]
fn every_order_event_round_trips_through_the_codec() {
    round_trips(order_created(None), "OrderCreated");
    round_trips(order_created(Some(eur())), "OrderCreated");
    round_trips(item_added("p-1", 3, "0.99", T0), "OrderItemAdded");
    round_trips(order_placed("2.97", 3), "OrderPlaced");
    round_trips(order_cancelled(None), "OrderCancelled");
    round_trips(order_cancelled(Some("late")), "OrderCancelled");
}

#[test]
fn stored_payloads_hold_integer_minor_units() {
    let (_, payload) = codec::encode(&product_created("19.99")).unwrap();
    assert_eq!(payload["price"], 1999);
    assert_eq!(payload["currency"], "EUR");
    assert_eq!(payload["product_id"], PRODUCT);
    let (_, payload) = codec::encode(&item_added("p-1", 3, "0.99", T0)).unwrap();
    assert_eq!(payload["unit_price"], 99);
    assert_eq!(payload["line_total"], 297);
    // An invalid currency in a stored payload is a loud decode error, not a silent value.
    let mut bad = payload.clone();
    bad["currency"] = "eur".into();
    assert!(codec::decode::<OrderEvent>("OrderItemAdded", 1, &bad).is_err());
}
