output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr_block" {
  description = "IPv4 CIDR block of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "availability_zones" {
  description = "Availability zones the subnets are in, in subnet order."
  value       = local.azs
}

output "public_subnet_ids" {
  description = "IDs of the public subnets (ALB, NAT gateways), one per AZ."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "IDs of the private subnets (tasks, interface endpoints), one per AZ."
  value       = aws_subnet.private[*].id
}

output "public_subnet_cidrs" {
  description = "CIDR blocks of the public subnets."
  value       = aws_subnet.public[*].cidr_block
}

output "private_subnet_cidrs" {
  description = "CIDR blocks of the private subnets."
  value       = aws_subnet.private[*].cidr_block
}

output "private_route_table_ids" {
  description = "IDs of the private route tables, one per AZ."
  value       = aws_route_table.private[*].id
}

output "nat_gateway_ids" {
  description = "IDs of the NAT gateways (one, or one per AZ)."
  value       = aws_nat_gateway.this[*].id
}

output "nat_public_ips" {
  description = "Elastic IPs the tasks' outbound traffic leaves from (allowlist these at the database, e.g. Supabase network restrictions)."
  value       = aws_eip.nat[*].public_ip
}

output "s3_endpoint_id" {
  description = "ID of the S3 gateway endpoint."
  value       = aws_vpc_endpoint.s3.id
}

output "interface_endpoint_ids" {
  description = "IDs of the interface endpoints, by service (empty unless enable_interface_endpoints)."
  value       = { for k, v in aws_vpc_endpoint.interface : k => v.id }
}

output "endpoints_security_group_id" {
  description = "ID of the interface endpoints' security group (null unless enable_interface_endpoints)."
  value       = one(aws_security_group.endpoints[*].id)
}

output "endpoints_ingress_rules" {
  description = "The interface endpoints' security group ingress rules (every attribute of each rule; empty unless enable_interface_endpoints)."
  value       = aws_vpc_security_group_ingress_rule.endpoints_https
}

output "flow_log_group_name" {
  description = "CloudWatch log group of the VPC flow logs (null unless enable_flow_logs)."
  value       = one(aws_cloudwatch_log_group.flow_logs[*].name)
}

output "flow_log_group" {
  description = "The flow logs' log group (all attributes of the aws_cloudwatch_log_group resource), or null unless enable_flow_logs."
  value       = one(aws_cloudwatch_log_group.flow_logs[*])
}

output "flow_log" {
  description = "The flow log (all attributes of the aws_flow_log resource), or null unless enable_flow_logs."
  value       = one(aws_flow_log.this[*])
}
