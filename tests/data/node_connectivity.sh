test_node_connectivity() {
  local node_url=$1
  
  echo "Testing node: $node_url"
  
  # Basic HTTP connectivity
  if curl -fsSL --max-time 5 "$node_url/health" > /dev/null; then
    echo "✅ Node responds"
  else
    echo "âŒ Node not responding"
  fi
  
  # Registry API access
  if curl -fsSL --max-time 5 "$node_url/registry-svc/node/self" > /dev/null; then
    echo "✅ Registry API accessible"
  else
    echo "âŒ Registry API failed"
  fi
}

# Test all nodes
oo post /registry-svc/nodes | jq -r '.nodes[].url' | \
while read -r node_url; do
  test_node_connectivity "$node_url"
done
