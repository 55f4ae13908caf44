// (being written)
namespace distill {}
