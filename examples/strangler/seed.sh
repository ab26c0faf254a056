#!/bin/sh
# Seeds the walkthrough's catalog (catalog.txt) into Ficus and into the legacy shop, under
# the same ids, and prints "ID NAME" per product.
#
# Ficus mints product ids itself (UUID v7) and has no "import under this id" command yet, so
# each product is created in Ficus first and then written into the legacy shop under Ficus's
# id (PUT /api/products/{id} is the legacy shop's create-or-replace). Same ids on both sides
# are what let the gateway compare GET /api/products/{id} one for one.
#
#   SELLER=$(ficus token --sub sam --roles seller --data-dir DIR) sh seed.sh > ids.txt
set -eu
FICUS=${FICUS:-http://127.0.0.1:7070}
LEGACY=${LEGACY:-http://127.0.0.1:8081}
: "${SELLER:?set SELLER to a seller token: ficus token --sub sam --roles seller}"
CATALOG=${CATALOG:-$(dirname "$0")/catalog.txt}

pos=0
while IFS='|' read -r name category price stock description; do
  body=$(printf '{"name":"%s","category":"%s","price":%s,"currency":"EUR","stock":%s,"description":"%s"}' \
    "$name" "$category" "$price" "$stock" "$description")
  answer=$(curl -sS --fail-with-body -X POST "$FICUS/v1/products" \
    -H "authorization: Bearer $SELLER" -H 'content-type: application/json' -d "$body")
  id=$(printf '%s' "$answer" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
  pos=$(printf '%s' "$answer" | sed -n 's/.*"position":\([0-9]*\).*/\1/p')
  curl -sS --fail-with-body -o /dev/null -X PUT "$LEGACY/api/products/$id" \
    -H 'content-type: application/json' -d "$body"
  echo "$id $name"
done < "$CATALOG"

# Returns once Ficus's catalog read model holds the last product (read-your-writes, bounded).
curl -sS --fail-with-body -o /dev/null "$FICUS/v1/products?min_position=$pos"
echo "seeded Ficus and the legacy shop (Ficus position $pos)" >&2
