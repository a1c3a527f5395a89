# crowbar::to_json(data): JSON text of a Puppet value (core Puppet 7 has no to_json; stdlib's is not
# assumed on the node). Shipped by Crowbar's puppet jig (crowbar/jigs/puppet.py).
require 'json'

Puppet::Functions.create_function(:'crowbar::to_json') do
  dispatch :to_json do
    param 'Any', :data
  end

  def to_json(data)
    JSON.generate(data)
  end
end
